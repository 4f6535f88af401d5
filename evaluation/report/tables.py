"""Report tables: result rows -> header and cells, and cells -> markdown / HTML.

Cells are plain strings that may hold inline markdown (``**bold**``, `` `code` ``): :func:`md_table` keeps it,
:func:`html_table` renders it (:func:`evaluation.report.render.inline_html`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

STAGE_NAMES = {"knn": "kNN", "linear": "linear probe", "finetune": "fine-tune"}


def pct(mean: float, std: float | None) -> str:
    """A fraction as ``"71.3 ± 1.1"`` (%), or without the std when there is none."""
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if std is not None else f"{100 * mean:.1f}"


def num(mean: float, std: float | None) -> str:
    """A number (mAP) as ``"0.3123 ± 0.012"``."""
    return f"{mean:.4g} ± {std:.2g}" if std is not None else f"{mean:.4g}"


def evaluation_name(r: dict[str, Any]) -> str:
    """A result row's evaluation column: ``"kNN k=20 top-1"``."""
    metric = "top-1" if r["metric"] == "top1" else "top-5"
    k = f" k={r['k']}" if r.get("k") is not None else ""
    return f"{STAGE_NAMES[r['stage']]}{k} {metric}"


def result_table(results: list[dict[str, Any]], fractions: list[float]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (evaluation, model, one mean ± std cell per fraction) of the main table."""
    n_labels = {r["label_fraction"]: r["n_labels"] for r in results}
    header = ["evaluation", "model"] + [f"{100 * f:g}% ({n_labels.get(f, '?')} labels)" for f in fractions]
    cells: dict[tuple[str, str], dict[float, str]] = defaultdict(dict)
    for r in results:
        cells[(evaluation_name(r), r["model"])][r["label_fraction"]] = pct(r["mean"], r["std"])
    rows = [[ev, model] + [c.get(f, "") for f in fractions] for (ev, model), c in cells.items()]
    return header, rows


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown (GFM) table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
