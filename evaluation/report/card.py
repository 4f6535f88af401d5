"""``selfsup-eval report --update-card``: the report's main table into the export's model card.

The card (``README.md``, written by ``selfsup export``, see :mod:`selfsup.model_card`) has an evaluation section
between two markers; this fills it with the report's results table (val accuracy %, mean ± std over seeds per
evaluation, model and label fraction) and what it was measured on, by data set names only (no local paths).
Running it again replaces the section; the rest of the card is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluation.report.tables import md_table, result_table
from selfsup.errors import CheckpointError
from selfsup.model_card import CARD_FILE, set_card_section


def card_path(weights: str | Path) -> Path:
    """The export's card, or a :class:`CheckpointError` saying how to get one (checked before any work)."""
    card = Path(weights) / CARD_FILE
    if not card.is_file():
        raise CheckpointError(f"--update-card: {card} not found; expected the model card written by `selfsup export` "
                              f"(export the run again to get one)")
    return card


def card_section(report: dict[str, Any]) -> str:
    """Markdown of the report's main table with one line on what it measures."""
    d, s = report["data"], report["settings"]
    header, rows = result_table(report["results"], s["label_fractions"])
    intro = (f"`selfsup-eval report`: val accuracy (%), mean ± std over {len(s['seeds'])} seed(s) (a different label "
             f"subset each) on `{Path(str(d['train'])).name}` ({d['num_train']} train images) / "
             f"`{Path(str(d['val'])).name}` ({d['num_val']} val images), {d['num_classes']} classes. "
             "`random_init` is the same architecture with random weights, the floor pretraining has to beat.")
    return intro + "\n\n" + md_table(header, rows)


def update_card(weights: str | Path, report: dict[str, Any]) -> Path:
    """Write :func:`card_section` of ``report`` into the evaluation section of the card in ``weights``."""
    card = card_path(weights)
    set_card_section(card, card_section(report))
    return card
